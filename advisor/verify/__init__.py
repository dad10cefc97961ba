"""The verification stage (collect -> load -> analyze -> recommend -> **verify** -> render / apply): every
rewrite the recommender proposes is run beside the function it replaces on a re-run of the user's own
script, and its fix records what that showed (`Fix.verification`). `stage.verify_report` is the entry
point; `child` and `session` run inside the re-run; `swap` installs rewrites without editing files;
`compare` compares results; `references` holds pure-PyTorch stand-ins for NPU-only ops."""
