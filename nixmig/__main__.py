from nixmig.entry import main

main()
