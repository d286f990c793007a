from nixmig.cli import main

main()
