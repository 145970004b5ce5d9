"""Telephony carriers as sans-I/O codecs. Twilio Media Streams is the one spoken today."""
