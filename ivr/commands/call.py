"""`ivr call +1…`: the bot places a call; `ivr call --csv numbers.csv`: a campaign.

The call goes through Twilio's REST API with the server's `<Connect><Stream>` TwiML: a server
(`ivr serve`) must be running at --url (IVR_PUBLIC_URL), with the same Twilio account, to take
the stream and the status callbacks. Credentials from the environment: TWILIO_ACCOUNT_SID with
TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and TWILIO_API_SECRET). With IVR_REDIS_URL, several runs
of one campaign (on several pods) split its numbers and keep its rate together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from pathlib import Path


def parse_rate(text: str) -> float:
    """"5", "5/s", "0.5/s" or "30/min" -> calls a second."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(?:/\s*(s|sec|second|m|min|minute))?\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a rate such as 1/s, 0.5/s or 30/min")
    return float(m.group(1)) / (60.0 if (m.group(2) or "s").startswith("m") else 1.0)


def register(sub: argparse._SubParsersAction) -> None:
    from ivr.commands.replay import parse_params

    p = sub.add_parser(
        "call",
        help="place a call (or a campaign of calls) with the bot on the line",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("to", nargs="?", help="the number to call, E.164 (+15551234567)")
    p.add_argument("--csv", metavar="FILE", help="campaign: call every number of FILE (a 'to' column; other columns become parameters)")
    p.add_argument("--from", dest="from_", default=os.environ.get("IVR_CALLER_ID", ""), help="caller ID, a number of the account [IVR_CALLER_ID]")
    p.add_argument("--flow", default="", help="a flow file beside the server's IVR_FLOW, by name (default: the server's flow)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a call parameter, {NAME} in the flow (repeatable)")
    p.add_argument("--no-amd", action="store_true", help="no answering-machine detection: the bot greets whoever answers at once")
    p.add_argument("--url", default=os.environ.get("IVR_PUBLIC_URL", ""), help="the server's public base URL, https://… [IVR_PUBLIC_URL]")
    p.add_argument("--rate", type=parse_rate, default=1.0, help="campaign: calls started per second, e.g. 1/s or 30/min (default 1/s)")
    p.add_argument("--max-concurrent", type=int, default=5, help="campaign: calls in progress at once (default 5)")
    p.add_argument("--campaign", help="campaign name, for resuming (default: the CSV file's name)")
    p.add_argument("--store", default=os.environ.get("IVR_OUTBOUND_DIR", ""), help="call records directory [IVR_OUTBOUND_DIR]")
    p.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    p.set_defaults(func=run, parse_params=parse_params)


def run(args: argparse.Namespace) -> int:
    from ivr.telephony.twilio_rest import TwilioRest
    from ivr.outbound.campaign import Campaign, CampaignError, read_targets, summary
    from ivr.outbound.place import NotPlaced, OutboundRequest, PlaceError, Placer
    from ivr.outbound.store import CallStore

    if bool(args.to) == bool(args.csv):
        print("ivr call: give a number to call, or --csv FILE for a campaign", file=sys.stderr)
        return 2
    try:
        params = args.parse_params(args.param)
    except argparse.ArgumentTypeError as exc:
        print(f"ivr call: {exc}", file=sys.stderr)
        return 2
    rest = TwilioRest.from_env()
    if rest is None:
        print("ivr call: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and TWILIO_API_SECRET)", file=sys.stderr)
        return 2
    store = CallStore(args.store or None)
    if args.to:  # a failure is said once, below, not also as a log line
        logging.getLogger("ivr.outbound").setLevel(logging.ERROR)
    try:
        placer = Placer(rest, args.url, store)
        if args.to:
            request = OutboundRequest(to=args.to, from_=args.from_, params=params, flow=args.flow, amd=not args.no_amd)
            placed = asyncio.run(_place_one(placer, request))
            print(f"call {placed['sid']} placed ({placed['status']}); `ivr calls` shows how it ends")
            return 0
        targets = read_targets(args.csv)
        campaign = Campaign(args.campaign or Path(args.csv).stem, placer, store, from_=args.from_, rate=args.rate,
                            max_concurrent=args.max_concurrent, flow=args.flow, params=params, amd=not args.no_amd,
                            poll_s=args.poll, on_progress=_printer())
        progress = asyncio.run(_run_campaign(campaign, targets, os.environ.get("IVR_REDIS_URL", "")))
    except (PlaceError, CampaignError) as exc:
        print(f"ivr call: {exc}", file=sys.stderr)
        return 2
    except NotPlaced as exc:
        print(f"ivr call: Twilio refused the call: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # no answer from Twilio at all (see Placer.place)
        from ivr.errors import FAILURE, UserError

        raise UserError(
            f"Twilio's API did not answer: {exc}",
            hint="check the network connection (and IVR_TWILIO_API_URL, if set); `ivr calls` shows whether a call was placed",
            status=FAILURE,
        ) from exc
    print(file=sys.stderr)
    print(summary(progress))
    return 0


async def _run_campaign(campaign, targets, redis_url: str = ""):
    from ivr.fleet import open_shared

    loop = asyncio.get_running_loop()
    # With IVR_REDIS_URL, runners of the same campaign on several pods split its numbers and
    # share its rate (ivr.outbound.campaign).
    campaign.shared = open_shared(redis_url)
    await campaign.shared.start()

    def interrupted() -> None:
        print("\nstopping: no more calls are placed (Ctrl-C again to quit at once); run the same "
              "command again to resume", file=sys.stderr)
        campaign.stop()
        loop.remove_signal_handler(signal.SIGINT)  # the next Ctrl-C is the usual KeyboardInterrupt

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, interrupted)
    try:
        return await campaign.run(targets)
    finally:
        await campaign.placer.aclose()
        await campaign.shared.aclose()


async def _place_one(placer, request):
    try:
        return await placer.place(request)
    finally:
        await placer.aclose()


def _printer():
    tty = sys.stderr.isatty()
    last = [""]

    def show(progress) -> None:
        line = progress.line()
        if line == last[0]:
            return
        last[0] = line
        # On a terminal one line is rewritten; in a log every change is its own line.
        print(("\r\x1b[K" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    return show
