"""Command-line training entry points, runnable under `torchrun` (one process per GPU; gloo on the CPU).

    torchrun --nproc_per_node=N -m unisid_pipeline.cli.train_unisid --config run.json --ads ads.parquet \\
        --labels labels.parquet [--summaries summaries.parquet] --out DIR
    torchrun --nproc_per_node=N -m unisid_pipeline.cli.train_recommender --config run.json \\
        --sids sids.parquet --sequences user_sequences.parquet --out DIR

Rank 0 writes DIR/model.safetensors (no pickle), DIR/history.json and DIR/summary.json. Started by Dagster Pipes
(`PipesSubprocessClient`, `PipesK8sClient`), rank 0 also streams logs and a final materialization
back to the orchestrator through dagster-pipes (never dagster itself).
"""
