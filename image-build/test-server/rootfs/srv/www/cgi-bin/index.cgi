#!/bin/sh
# busybox httpd runs this for / (there is no index.html).
printf 'Content-Type: text/plain\r\n\r\n'
/usr/lib/isthmus/facts
echo "client=${REMOTE_ADDR#::ffff:}"
