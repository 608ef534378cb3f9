from imagetool.cli.main import main

main()
