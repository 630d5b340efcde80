from quicktune.cli import main

main()
