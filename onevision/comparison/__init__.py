"""OneVision against the cascade and the references on the same TEST queries (stage ``evaluate``): the
systems compared, the kNN/popularity/random references, the stage, its report, the Dask-sharded pass.

Above ``onevision.evaluation`` (metrics, cost, harness: what every stage measures with) and the packages of
the systems it builds (generative, mca)."""
