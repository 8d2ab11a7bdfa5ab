from kvcrush.cli import main

raise SystemExit(main())
