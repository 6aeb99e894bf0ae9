"""Pure geometry and the streaming engine: patches on the 32 px lattice (:mod:`.grid`), the
plan of batches and strips (:mod:`.plan`), blend weights and the accumulator
(:mod:`.blend`), and the reader/model/blend threads that stream a plan (:mod:`.stream`).
Knows nothing of files, formats or models."""
