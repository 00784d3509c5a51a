# Kernels at speed (issue 3; seeds 001, 002): empirical vs infinite-width NTK, kernel
# regression vs the trained network, linearized vs real GD.
# dataset (digits [, cifar2]) -> {kernel_accuracy per (n, seed), ntk_convergence per h,
#   linearized_training per h} -> summary (CSV) -> figures
from memgen.experiments import kernels as KN

if "kernels" in config:
    KN_CFG = config["kernels"]
    KN_FORMATS = KN_CFG["figures"]["formats"]
    KN_ACC = [f"data/runs/kernels/accuracy/{KN.accuracy_name(p['ds'], p['n'], p['seed'])}.h5"
              for p in KN.accuracy_points(KN_CFG)]
    KN_CONV = [f"data/kernels/kernels/convergence/h~{h}.h5" for h in KN.convergence_widths(KN_CFG)]
    KN_LIN = [f"data/runs/kernels/linearized/h~{h}.h5" for h in KN.linearized_widths(KN_CFG)]
    FAMILY_TARGETS["kernels"] = expand("figures/kernels/{name}.{ext}", name=KN.FIGURES, ext=KN_FORMATS)

    rule kn_dataset:
        output:
            "data/datasets/kernels_{ds}.h5",
        wildcard_constraints:
            ds="digits|cifar2",
        params:
            json=lambda wc: pjson(KN.dataset_params(KN_CFG, wc.ds)),
            code=code_hash("dataset"),
        log:
            "logs/kernels/dataset_{ds}.log",
        shell:
            step_shell("dataset", [])

    rule kn_accuracy:
        input:
            dataset="data/datasets/kernels_{ds}.h5",
        output:
            "data/runs/kernels/accuracy/{ds}/n~{n}_seed~{seed}.h5",
        wildcard_constraints:
            ds="digits|cifar2",
            n=r"\d+",
        params:
            json=lambda wc: pjson(KN.accuracy_params(KN_CFG, wc.ds, int(wc.n), int(wc.seed))),
            code=code_hash("kernel_accuracy"),
        threads: RES["threads"]
        resources:
            **heavy_resources(),
        log:
            "logs/kernels/accuracy/{ds}/n~{n}_seed~{seed}.log",
        benchmark:
            "logs/benchmark/kernels/accuracy/{ds}/n~{n}_seed~{seed}.tsv"
        shell:
            step_shell("kernel_accuracy", ["dataset"])

    rule kn_convergence:
        input:
            dataset="data/datasets/kernels_digits.h5",
        output:
            "data/kernels/kernels/convergence/h~{h}.h5",
        params:
            json=lambda wc: pjson(KN.convergence_params(KN_CFG, int(wc.h))),
            code=code_hash("ntk_convergence"),
        threads: RES["threads"]
        resources:
            **heavy_resources(),
        log:
            "logs/kernels/convergence/h~{h}.log",
        benchmark:
            "logs/benchmark/kernels/convergence/h~{h}.tsv"
        shell:
            step_shell("ntk_convergence", ["dataset"])

    rule kn_linearized:
        input:
            dataset="data/datasets/kernels_digits.h5",
        output:
            "data/runs/kernels/linearized/h~{h}.h5",
        params:
            json=lambda wc: pjson(KN.linearized_params(KN_CFG, int(wc.h))),
            code=code_hash("linearized_training"),
        threads: RES["threads"]
        resources:
            **heavy_resources(),
        log:
            "logs/kernels/linearized/h~{h}.log",
        benchmark:
            "logs/benchmark/kernels/linearized/h~{h}.tsv"
        shell:
            step_shell("linearized_training", ["dataset"])

    rule kn_summary:
        input:
            accuracy=KN_ACC,
            convergence=KN_CONV,
            linearized=KN_LIN,
        output:
            accuracy="data/summary/kernels_accuracy.csv",
            convergence="data/summary/kernels_convergence.csv",
            linearized="data/summary/kernels_linearized.csv",
        params:
            code=code_hash("summary"),
        log:
            "logs/kernels/summary.log",
        shell:
            memgen_shell(
                "summary kernels --input accuracy {input.accuracy}"
                " --input convergence {input.convergence} --input linearized {input.linearized}"
                " --output accuracy={output.accuracy} --output convergence={output.convergence}"
                " --output linearized={output.linearized}"
            )

    rule kn_figure:
        input:
            accuracy=rules.kn_summary.output.accuracy,
            convergence=rules.kn_summary.output.convergence,
            linearized=rules.kn_summary.output.linearized,
        output:
            figure_outputs("kernels", KN_FORMATS),
        wildcard_constraints:
            name="|".join(KN.FIGURES),
        params:
            options=pjson(KN_CFG["figures"]),
            code=code_hash("figure"),
        log:
            "logs/kernels/figure/{name}.log",
        shell:
            memgen_shell(
                "figure kernels {wildcards.name} --input accuracy={input.accuracy}"
                " --input convergence={input.convergence} --input linearized={input.linearized}"
                " --output {output} --options {params.options:q}"
            )
