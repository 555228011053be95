"""The command line's subcommands beyond validation: ops (facilities, reports, uploads), signing, receipts."""
