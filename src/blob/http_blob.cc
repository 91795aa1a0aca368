// Placeholder until the libcurl reader lands: refuses every URL with a clear message.
#include "blob/blob.h"

namespace imgstream::blob {

Result<std::unique_ptr<BlobReader>> open_http_blob(const std::string& url, const BlobOptions&) {
  return Error{ENOTSUP, url + ": HTTP sources are not built yet"};
}

}  // namespace imgstream::blob
