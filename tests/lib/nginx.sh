#!/usr/bin/env bash
# nginx.sh - the nginx that tests and benchmarks serve packs with (library).
#
#   source tests/lib/nginx.sh
#   nginx_write_conf DIR ROOT PORT [DIRECTIVES]
#       writes DIR/nginx.conf: a foreground, single-process nginx (no master,
#       one worker) serving ROOT on 127.0.0.1:PORT, its pid, logs and
#       temporary files under DIR; DIRECTIVES go into the server block (e.g.
#       "max_ranges 0;" or "limit_rate 1m;"). Start it with
#       `nginx -c DIR/nginx.conf -p DIR`; the caller owns the process (it stays
#       in the foreground, so its pid is the one to stop).
#   nginx_free_port     a free TCP port on 127.0.0.1
#
# DIR/access.log has one line per request: METHOD URI STATUS BODY_BYTES "RANGE",
# what the checks count (requests, 206 answers, bytes sent per file).

nginx_write_conf() {
    local d="$1" root="$2" port="$3" extra="${4:-}"
    mkdir -p "$d/tmp"
    cat >"$d/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log notice;
events { worker_connections 256; }
http {
    log_format ranges '\$request_method \$uri \$status \$body_bytes_sent "\$http_range"';
    access_log $d/access.log ranges;
    client_body_temp_path $d/tmp;
    proxy_temp_path $d/tmp;
    fastcgi_temp_path $d/tmp;
    uwsgi_temp_path $d/tmp;
    scgi_temp_path $d/tmp;
    default_type application/octet-stream;
    sendfile on;
    server {
        listen 127.0.0.1:$port;
        root $root;
        $extra
    }
}
EOF
}

nginx_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
