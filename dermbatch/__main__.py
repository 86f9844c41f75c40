from dermbatch.cli import main

main()
