# Lazy vs feature time scales on sparse parity (Geiger et al. 2019; seed 000).
#   ts_dataset -> ts_init (h, seed) -> ts_train (alpha, h, seed) -> ts_ntk_final
#                                   -> ts_ntk_init (h, seed)      -> ts_frozen (alpha, h, seed)
#              -> ts_summary (CSV) -> ts_figure (name)
# Steps, their files and params are declared in memgen.families.time_scale.
family_rules("time_scale")
