from pi2pi.cli import main

raise SystemExit(main())
