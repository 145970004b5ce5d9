"""Outbound calls: the bot places calls (reminders, call-backs) through Twilio's REST API.

- `place`: one call, `calls.create` with our `<Connect><Stream>` TwiML; the request's parameters
  travel as `<Parameter>`s into the stream's `customParameters`, hence into the flow's variables;
- `amd`: Twilio's async answering-machine verdict, awaited before the bot says anything;
- `store`: what happened to each call (JSON lines), read by `ivr calls` and campaign resume;
- `routes`: `POST /calls` (bearer token), `GET /calls`, and the signed status and AMD callbacks;
- `campaign`: many calls from a CSV file within a rate and a concurrency limit, resumable.
"""
