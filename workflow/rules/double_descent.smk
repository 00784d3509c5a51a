# Epoch-wise and model-wise double descent (Heckel & Yilmaz 2021; Advani & Saxe 2020; seed 004).
#   dd_linear (schedule) -> dd_theory_linear;  dd_two_layer (init) -> dd_theory_two_layer (init);
#   dd_modelwise, dd_theory_modelwise  -> dd_summary (CSV) -> dd_figure (name)
# Steps, their files and params are declared in memgen.families.double_descent.
family_rules("double_descent")
