"""Subcommands of `ivr`; see ivr.cli.COMMANDS."""
