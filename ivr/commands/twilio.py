"""`ivr twilio setup`: point a Twilio phone number and/or SIP Domain at an ivr server.

Through Twilio's REST API (the twilio library, synchronous: this is a one-shot command):
- `--number +1…`: the number's voice webhook (POST {url}/twiml/voice) and call status callback
  (POST {url}/twiml/status);
- `--sip-domain name.sip.twilio.com`: the same for a SIP Domain (created with `--create-domain`);
- `--twiml-bin`: print the TwiML Bin to paste instead (Console > TwiML Bins), for accounts where
  the webhook cannot be used.

Credentials from the environment only: TWILIO_ACCOUNT_SID with TWILIO_AUTH_TOKEN, or an API key
pair (TWILIO_API_KEY, TWILIO_API_SECRET). IVR_TWILIO_API_URL sends the requests elsewhere (a
fake API in tests).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from typing import Mapping

E164 = re.compile(r"\+[1-9]\d{6,14}")
DOMAIN = re.compile(r"[a-z0-9][a-z0-9-]*\.sip(\.[a-z0-9-]+)?\.twilio\.com")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("twilio", help="configure Twilio for this bot (phone number, SIP Domain)")
    tsub = p.add_subparsers(dest="twilio_command", metavar="COMMAND")
    s = tsub.add_parser(
        "setup",
        help="point a phone number and/or SIP Domain at the server",
        description=(
            "Point a Twilio phone number's voice webhook and status callback (and/or a SIP Domain's) at the "
            "server at --url, through the REST API, or print the TwiML Bin to paste. Credentials: "
            "TWILIO_ACCOUNT_SID with TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and TWILIO_API_SECRET)."
        ),
    )
    s.add_argument("--url", required=True, help="the server's public base URL, https://… (the same as its IVR_PUBLIC_URL)")
    s.add_argument("--number", help="a phone number of the account, E.164 (+15551234567)")
    s.add_argument("--sip-domain", metavar="NAME.sip.twilio.com", help="a SIP Domain of the account")
    s.add_argument("--create-domain", action="store_true", help="create the SIP Domain if the account has none by that name")
    s.add_argument("--fallback-url", help="voice fallback URL (e.g. a TwiML Bin that apologises) for when the server fails")
    s.add_argument("--detach-trunk", action="store_true",
                   help="take the number off its Elastic SIP Trunk (a trunk's number ignores its voice webhook)")
    s.add_argument("--twiml-bin", action="store_true", help="print the TwiML Bin document for this URL")
    s.add_argument("--dry-run", action="store_true", help="show what would change; change nothing")
    s.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


@dataclass(frozen=True)
class Webhooks:
    voice: str
    status: str
    fallback: str = ""

    @classmethod
    def for_base(cls, base: str, fallback: str = "") -> "Webhooks":
        base = base.rstrip("/")
        return cls(f"{base}/twiml/voice", f"{base}/twiml/status", fallback)


class SetupError(Exception):
    pass


def client_from_env(env: Mapping[str, str] | None = None):
    env = os.environ if env is None else env
    sid = env.get("TWILIO_ACCOUNT_SID", "")
    token = env.get("TWILIO_AUTH_TOKEN", "")
    key, secret = env.get("TWILIO_API_KEY", ""), env.get("TWILIO_API_SECRET", "")
    if not sid.startswith("AC") or not (token or (key and secret)):
        raise SetupError("set TWILIO_ACCOUNT_SID (AC…) and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and TWILIO_API_SECRET)")
    from twilio.rest import Client

    client = Client(key, secret, sid) if key and secret else Client(sid, token)
    if env.get("IVR_TWILIO_API_URL"):
        client.api.base_url = env["IVR_TWILIO_API_URL"].rstrip("/")
    return client


def setup_number(client, number: str, hooks: Webhooks, *, detach_trunk: bool = False, dry_run: bool = False) -> list[str]:
    """Point `number` at the server; returns lines for the user."""
    found = client.incoming_phone_numbers.list(phone_number=number, limit=2)
    if not found:
        raise SetupError(f"{number} is not a phone number of this account (buy one: Console > Phone Numbers)")
    pn = found[0]
    out = []
    changes = {
        "voice_url": hooks.voice, "voice_method": "POST",
        "status_callback": hooks.status, "status_callback_method": "POST",
    }
    if hooks.fallback:
        changes.update(voice_fallback_url=hooks.fallback, voice_fallback_method="POST")
    if getattr(pn, "voice_application_sid", None):
        # A TwiML App on the number wins over its voice URL: take it off, or nothing changes.
        changes["voice_application_sid"] = ""
        out.append(f"{number}: its TwiML App {pn.voice_application_sid} is removed (it would override the webhook)")
    if getattr(pn, "trunk_sid", None):
        if not detach_trunk:
            raise SetupError(
                f"{number} belongs to Elastic SIP Trunk {pn.trunk_sid}: its calls go to the trunk, not to a webhook. "
                "Run again with --detach-trunk, or use another number (see infra/sip/README.md)"
            )
        changes["trunk_sid"] = ""
        out.append(f"{number}: taken off trunk {pn.trunk_sid}")
    if dry_run:
        return out + [f"{number} ({pn.sid}) would get: " + ", ".join(f"{k}={v or '(none)'}" for k, v in changes.items())]
    updated = client.incoming_phone_numbers(pn.sid).update(**changes)
    if updated.voice_url != hooks.voice or updated.status_callback != hooks.status:
        raise SetupError(f"{number}: Twilio did not keep the webhook (voice_url is now {updated.voice_url!r})")
    return out + [f"{number} ({pn.sid}): voice webhook POST {hooks.voice}, status callback POST {hooks.status}"]


def setup_domain(client, name: str, hooks: Webhooks, *, create: bool = False, dry_run: bool = False) -> list[str]:
    """Point SIP Domain `name` at the server (creating it with `create`)."""
    domain = next((d for d in client.sip.domains.list() if d.domain_name == name), None)
    fields = {
        "voice_url": hooks.voice, "voice_method": "POST",
        "voice_status_callback_url": hooks.status, "voice_status_callback_method": "POST",
    }
    if hooks.fallback:
        fields.update(voice_fallback_url=hooks.fallback, voice_fallback_method="POST")
    if domain is None:
        if not create:
            raise SetupError(f"the account has no SIP Domain {name}; run again with --create-domain to create it")
        if dry_run:
            return [f"SIP Domain {name} would be created with voice webhook POST {hooks.voice}"]
        domain = client.sip.domains.create(domain_name=name, friendly_name="ivr", **fields)
        verb = "created"
    else:
        if dry_run:
            return [f"SIP Domain {name} ({domain.sid}) would get: " + ", ".join(f"{k}={v}" for k, v in fields.items())]
        domain = client.sip.domains(domain.sid).update(**fields)
        verb = "updated"
    if domain.voice_url != hooks.voice:
        raise SetupError(f"SIP Domain {name}: Twilio did not keep the webhook (voice_url is now {domain.voice_url!r})")
    return [
        f"SIP Domain {name} ({domain.sid}) {verb}: voice webhook POST {hooks.voice}, status callback POST {hooks.status}",
        f"SIP Domain {name}: it accepts calls only from an IP access control list or credential list mapped to it "
        "(see infra/sip/README.md)",
    ]


def twiml_bin(base: str) -> str:
    """The answer TwiML as a TwiML Bin: Twilio fills the {{…}} templates from each call."""
    from xml.dom import minidom

    from ivr.telephony import twiml

    doc = twiml.answer(base.rstrip("/"), caller="{{From}}", callee="{{To}}", call_sid="{{CallSid}}")
    return minidom.parseString(doc).toprettyxml(indent="  ", encoding="UTF-8").decode().strip()


def run(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/")
    if not url.startswith("https://") or "/" in url[len("https://"):]:
        print(f"ivr twilio setup: --url must be the server's https:// base URL with no path, not {args.url!r} "
              "(Twilio opens the Media Stream with wss:// on the same host)", file=sys.stderr)
        return 2
    if args.number and not E164.fullmatch(args.number):
        print(f"ivr twilio setup: --number must be E.164, like +15551234567, not {args.number!r}", file=sys.stderr)
        return 2
    if args.sip_domain and not DOMAIN.fullmatch(args.sip_domain):
        print(f"ivr twilio setup: --sip-domain must look like name.sip.twilio.com, not {args.sip_domain!r}", file=sys.stderr)
        return 2
    if not (args.number or args.sip_domain or args.twiml_bin):
        print("ivr twilio setup: give --number, --sip-domain and/or --twiml-bin", file=sys.stderr)
        return 2
    if args.twiml_bin:
        print(twiml_bin(url))
        print(
            "# Paste this in Console > TwiML Bins, then choose the Bin under the number's 'A call comes in'.\n"
            "# A Bin answers every call with a stream: the server's busy answer (IVR_MAX_CALLS, drain) and\n"
            "# the webhook's signature check are skipped; prefer the webhook (--number) when you can.",
            file=sys.stderr,
        )
    if not (args.number or args.sip_domain):
        return 0
    hooks = Webhooks.for_base(url, args.fallback_url or "")
    try:
        client = client_from_env()
        lines: list[str] = []
        if args.number:
            lines += setup_number(client, args.number, hooks, detach_trunk=args.detach_trunk, dry_run=args.dry_run)
        if args.sip_domain:
            lines += setup_domain(client, args.sip_domain, hooks, create=args.create_domain, dry_run=args.dry_run)
    except SetupError as exc:
        print(f"ivr twilio setup: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the twilio library's errors (auth, not found, network) all mean "not done"
        print(f"ivr twilio setup: the Twilio API refused or failed: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    if not args.dry_run:
        print(f"The server must run with IVR_PUBLIC_URL={url} and this account's TWILIO_AUTH_TOKEN (signatures).")
    return 0
