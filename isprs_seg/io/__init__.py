"""Rasters in and out: opening inputs and reading row bands (:mod:`.raster`), what the model
is fed (:mod:`.recipe`, :mod:`.resample`), output rasters and their names
(:mod:`.outputs`), temporaries committed whole (:mod:`.atomic`), legends
(:mod:`.legend`) and the record of what made an output (:mod:`.provenance`)."""
