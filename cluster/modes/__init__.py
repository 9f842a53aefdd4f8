"""The `./launch.sh` modes, one module each: `add_parser(subparsers)` declares it, `run(args)` runs it."""
