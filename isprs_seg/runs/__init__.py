"""Where and how runs are computed: the engine protocol and the data crossing it
(:mod:`.engine`), the plan of one input (:mod:`.job`), the local engine (:mod:`.local`),
the Ray engine (:mod:`.cluster`, :mod:`.manifest`), batches of inputs (:mod:`.batch`),
memory (:mod:`.memory`) and the dry run (:mod:`.dryrun`)."""
