from deltalens.cli import main

main()
