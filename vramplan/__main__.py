from vramplan.cli import main

raise SystemExit(main())
