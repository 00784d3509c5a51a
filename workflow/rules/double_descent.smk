# Epoch-wise and model-wise double descent (Heckel & Yilmaz 2021; Advani & Saxe 2020; seed 004).
# {dd_linear (per schedule), dd_two_layer (per init), dd_modelwise} -> their theory
# (closed form, reduced ODE + lazy network, model-wise curves) -> summary (CSV) -> figures
from memgen.experiments import double_descent as DD

if "double_descent" in config:
    DD_CFG = config["double_descent"]
    DD_FORMATS = DD_CFG["figures"]["formats"]
    FAMILY_TARGETS["double_descent"] = expand("figures/double_descent/{name}.{ext}", name=DD.FIGURES, ext=DD_FORMATS)

    rule dd_linear:
        output:
            "data/runs/double_descent/linear_{schedule}.h5",
        wildcard_constraints:
            schedule="|".join(DD.SCHEDULES),
        params:
            json=lambda wc: pjson(DD.linear_params(DD_CFG, wc.schedule)),
            code=code_hash("dd_linear"),
        threads: RES["threads"]
        resources:
            **heavy_resources(),
        log:
            "logs/double_descent/linear_{schedule}.log",
        benchmark:
            "logs/benchmark/double_descent/linear_{schedule}.tsv"
        shell:
            step_shell("dd_linear", [])

    rule dd_theory_linear:
        output:
            "data/theory/double_descent/linear.h5",
        params:
            json=pjson(DD.theory_linear_params(DD_CFG)),
            code=code_hash("dd_theory_linear"),
        log:
            "logs/double_descent/theory_linear.log",
        shell:
            step_shell("dd_theory_linear", [])

    rule dd_two_layer:
        output:
            "data/runs/double_descent/two_layer_{init}.h5",
        wildcard_constraints:
            init="|".join(DD.INITS),
        params:
            json=lambda wc: pjson(DD.two_layer_params(DD_CFG, wc.init)),
            code=code_hash("dd_two_layer"),
        threads: RES["threads"]
        resources:
            **heavy_resources(),
        log:
            "logs/double_descent/two_layer_{init}.log",
        benchmark:
            "logs/benchmark/double_descent/two_layer_{init}.tsv"
        shell:
            step_shell("dd_two_layer", [])

    rule dd_theory_two_layer:
        input:
            run=rules.dd_two_layer.output[0],
        output:
            "data/theory/double_descent/two_layer_{init}.h5",
        wildcard_constraints:
            init="|".join(DD.INITS),
        params:
            json=lambda wc: pjson(DD.theory_two_layer_params(DD_CFG, wc.init)),
            code=code_hash("dd_theory_two_layer"),
        log:
            "logs/double_descent/theory_two_layer_{init}.log",
        shell:
            step_shell("dd_theory_two_layer", ["run"])

    rule dd_modelwise:
        output:
            "data/runs/double_descent/modelwise.h5",
        params:
            json=pjson(DD.modelwise_params(DD_CFG)),
            code=code_hash("dd_modelwise"),
        threads: RES["threads"]
        resources:
            **heavy_resources(),
        log:
            "logs/double_descent/modelwise.log",
        benchmark:
            "logs/benchmark/double_descent/modelwise.tsv"
        shell:
            step_shell("dd_modelwise", [])

    rule dd_theory_modelwise:
        output:
            "data/theory/double_descent/modelwise.h5",
        params:
            json=pjson(DD.theory_modelwise_params(DD_CFG)),
            code=code_hash("dd_theory_modelwise"),
        log:
            "logs/double_descent/theory_modelwise.log",
        shell:
            step_shell("dd_theory_modelwise", [])

    rule dd_summary:
        input:
            linear=expand("data/runs/double_descent/linear_{schedule}.h5", schedule=DD.SCHEDULES),
            theory_linear=rules.dd_theory_linear.output[0],
            two_layer=expand("data/runs/double_descent/two_layer_{init}.h5", init=DD.INITS),
            theory_two_layer=expand("data/theory/double_descent/two_layer_{init}.h5", init=DD.INITS),
            modelwise=rules.dd_modelwise.output[0],
            theory_modelwise=rules.dd_theory_modelwise.output[0],
        output:
            epochwise="data/summary/double_descent_epochwise.csv",
            two_layer="data/summary/double_descent_two_layer.csv",
            jacobian="data/summary/double_descent_jacobian.csv",
            modelwise="data/summary/double_descent_modelwise.csv",
            key_numbers="data/summary/double_descent_key_numbers.csv",
        params:
            code=code_hash("summary"),
        log:
            "logs/double_descent/summary.log",
        shell:
            memgen_shell(
                "summary double_descent --input linear {input.linear}"
                " --input theory_linear {input.theory_linear} --input two_layer {input.two_layer}"
                " --input theory_two_layer {input.theory_two_layer} --input modelwise {input.modelwise}"
                " --input theory_modelwise {input.theory_modelwise}"
                " --output epochwise={output.epochwise} --output two_layer={output.two_layer}"
                " --output jacobian={output.jacobian} --output modelwise={output.modelwise}"
                " --output key_numbers={output.key_numbers}"
            )

    rule dd_figure:
        input:
            epochwise=rules.dd_summary.output.epochwise,
            two_layer=rules.dd_summary.output.two_layer,
            jacobian=rules.dd_summary.output.jacobian,
            modelwise=rules.dd_summary.output.modelwise,
        output:
            figure_outputs("double_descent", DD_FORMATS),
        wildcard_constraints:
            name="|".join(DD.FIGURES),
        params:
            options=pjson(DD_CFG["figures"]),
            code=code_hash("figure"),
        log:
            "logs/double_descent/figure/{name}.log",
        shell:
            memgen_shell(
                "figure double_descent {wildcards.name} --input epochwise={input.epochwise}"
                " --input two_layer={input.two_layer} --input jacobian={input.jacobian}"
                " --input modelwise={input.modelwise} --output {output} --options {params.options:q}"
            )
