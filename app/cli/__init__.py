"""Command-line tools registered on the Faust app (`faust -A app <command>`)."""
