#!/usr/bin/env bash
# Installs Debian's Postfix (if missing), configures it on 127.0.0.1:2526 to
# accept mail for bench.test and deliver it into one Maildir (virtual
# delivery, fsync'ed as Postfix always does), starts it, and runs finaldot's
# benchmark matrix with the same cells against it:
#
#   bash tests/scripts/postfix-bench.sh [extra bench arguments, e.g. --seconds 20]
#
# It changes /etc/postfix on this machine: run it on a bench machine only.
# `postfix stop` stops Postfix again.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v postfix >/dev/null 2>&1; then
    apt-get update -qq
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix
fi

mkdir -p /var/mail/vhosts/bench.test
chown -R 5000:5000 /var/mail/vhosts 2>/dev/null || true
cat > /etc/postfix/main.cf <<CF
compatibility_level = 3.6
myhostname = postfix.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = bench.test
virtual_mailbox_base = /var/mail/vhosts
virtual_mailbox_maps = static:bench.test/alice/
virtual_uid_maps = static:5000
virtual_gid_maps = static:5000
virtual_minimum_uid = 100
smtpd_client_connection_count_limit = 1000
default_process_limit = 200
maillog_file = /var/log/postfix.log
CF
# Listen on 2526 instead of 25.
sed -i 's/^smtp \+inet .*/2526      inet  n       -       y       -       -       smtpd/' /etc/postfix/master.cf
grep -q '^2526 ' /etc/postfix/master.cf || echo '2526      inet  n       -       y       -       -       smtpd' >> /etc/postfix/master.cf
postfix check
postfix stop >/dev/null 2>&1 || true
postfix start
sleep 2
postconf mail_version

./dev bench --compare 127.0.0.1:2526 --compare-to alice@bench.test \
    --compare-maildir /var/mail/vhosts/bench.test/alice/new \
    --compare-queue /var/spool/postfix/incoming,/var/spool/postfix/active "$@"
