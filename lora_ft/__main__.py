from lora_ft.cli import main

raise SystemExit(main())
