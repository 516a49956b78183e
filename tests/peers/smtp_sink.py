#!/usr/bin/python3
"""A real SMTP server for tests: Debian's aiosmtpd, storing every mail it accepts.

Usage: smtp_sink.py OUT_DIR [--tls-cert CERT --tls-key KEY [--smtps]] [--user U --password P]
                            [--max-seconds N]

Binds 127.0.0.1 port 0 and prints the port on the first stdout line. With a certificate it
offers STARTTLS and requires it before MAIL (or, with --smtps, speaks TLS from the first byte);
with --user it requires AUTH (PLAIN/LOGIN) before MAIL. Each accepted mail becomes
OUT_DIR/NNNN.eml (the message as received) and OUT_DIR/NNNN.json ({"mail_from", "rcpt_tos",
"helo", "tls", "auth"}), written via tmp + rename so a reader never sees half a file.
Exits on SIGTERM, when its parent dies, or after --max-seconds (default 300).
"""

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult


class FileSink:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.out_dir, "%04d" % self.count)
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "helo": session.host_name,
            "tls": session.ssl is not None,
            "auth": session.authenticated,
        }
        for ext, data in ((".eml", envelope.original_content),
                          (".json", json.dumps(meta).encode())):
            with open(base + ext + ".tmp", "wb") as f:
                f.write(data)
            os.rename(base + ext + ".tmp", base + ext)
        return "250 Message accepted"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--smtps", action="store_true")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--max-seconds", type=float, default=300)
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)

    ctx = None
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (auth_data.login.decode() == a.user and auth_data.password.decode() == a.password)
        return AuthResult(success=ok)

    handler = FileSink(a.out_dir)
    kwargs = {"hostname": "sink.tocsin.test"}
    if ctx and not a.smtps:
        kwargs.update(tls_context=ctx, require_starttls=True)
    if a.user:
        kwargs.update(authenticator=authenticator, auth_required=True,
                      auth_require_tls=bool(ctx))

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, **kwargs), "127.0.0.1", 0,
        ssl=ctx if a.smtps else None))
    print(server.sockets[0].getsockname()[1], flush=True)

    parent = os.getppid()

    async def watchdog():
        waited = 0.0
        while waited < a.max_seconds and os.getppid() == parent:
            await asyncio.sleep(0.2)
            waited += 0.2
        loop.stop()

    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.create_task(watchdog())
    loop.run_forever()
    server.close()


if __name__ == "__main__":
    sys.exit(main())
