"""The training process (`openft train job.json`): supervised or DPO fine-tuning, LoRA or full, with exact resume.

Runs in its own process and talks to the worker only through `openft.trainer_contract` (job.json in, JSON-lines
progress on stdout, an exit code out). It imports nothing of the service (api, db, jobs, ...).
Modules: entrypoint (run), recipe (the loop), objectives (SFT / DPO), dpo_loss, data (tokenize + masks,
batches), packing (rows without cross-example attention), forward (the model call), precision (fp32 / bf16),
model (load, LoRA, reference, save), checkpoint (write/verify/prune, RNG state), metrics (metrics.jsonl,
results.csv), progress (the channel), tracking (W&B).
Nothing heavy is imported here: `openft.training.entrypoint.run` is the one entry point.
"""
