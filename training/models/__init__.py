"""Trainable towers and models: what training optimises, each with the functions training needs
(embed functions per tower, loaders from base checkpoints, reference forwards). Serving code in
`app/` never imports these; these import serving code (the served forward is the one trained)."""
