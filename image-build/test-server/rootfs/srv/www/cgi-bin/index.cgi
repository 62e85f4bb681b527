#!/bin/sh
# busybox httpd runs this for / (there is no index.html).
printf 'Content-Type: text/plain\r\n\r\n'
/usr/lib/isthmus/facts
# busybox httpd gives IPv4 clients as "[::ffff:a.b.c.d]".
client=${REMOTE_ADDR#[}
client=${client%]}
echo "client=${client#::ffff:}"
