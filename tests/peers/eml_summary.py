#!/usr/bin/python3
"""Reads a stored mail (RFC 5322 / MIME) with Python's email package and prints one JSON
object: the decoded headers and every leaf part with its type, filename and decoded text. Tests
use it so a mail's structure is checked by a parser that is not ours.

Usage: eml_summary.py FILE.eml
"""

import email
import email.policy
import json
import sys


def main():
    with open(sys.argv[1], "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    parts = []
    for part in msg.walk():
        if part.is_multipart():
            parts.append({"type": part.get_content_type(), "multipart": True})
            continue
        parts.append({
            "type": part.get_content_type(),
            "filename": part.get_filename(),
            "disposition": part.get_content_disposition(),
            "charset": part.get_content_charset(),
            "text": part.get_content() if part.get_content_maintype() == "text" else None,
        })
    print(json.dumps({
        "subject": str(msg["subject"]),
        "from": str(msg["from"]),
        "to": str(msg["to"]),
        "date": str(msg["date"]),
        "message_id": str(msg["message-id"]),
        "content_type": msg.get_content_type(),
        "defects": [str(d) for d in msg.defects],
        "parts": parts,
    }))


if __name__ == "__main__":
    main()
