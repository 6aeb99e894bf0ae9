from isprs_seg.cli import main

main()
