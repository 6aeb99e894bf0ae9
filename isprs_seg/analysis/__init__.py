"""What is made of finished class rasters: polygons (:mod:`.vectorize`) and scores against
labels (:mod:`.evaluate`)."""
