"""The MCA baseline cascade (stage ``mca``): faiss recall -> linear pre-ranker -> LambdaMART ranker."""

# Said wherever MCA is the baseline a number is read against (reports/evaluate.md, the gate report).
RANKER_CHANGE = ("since 2026-12-07 `mca` ranks with LambdaMART (LightGBM lambdarank on query groups, graded ordered > clicked > shown, "
                 "position-debiased, tuned on VAL); `mca_pointwise` is the pointwise classifier it replaced, `mca_no_ranker` the cascade without a ranker")
