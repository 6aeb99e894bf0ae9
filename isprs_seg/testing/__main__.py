from isprs_seg.testing.standins import main

main()
