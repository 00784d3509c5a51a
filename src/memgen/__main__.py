from memgen.cli import main

raise SystemExit(main())
