# Lazy vs feature time scales on sparse parity (Geiger et al. 2019; seed 000).
# dataset -> init -> {train, ntk at init} -> {ntk at the end, frozen-kernel run}
#         -> summary (CSV) -> figures
from memgen.experiments import time_scale as TS

if "time_scale" in config:
    TS_CFG = config["time_scale"]
    TS_POINTS = TS.points(TS_CFG)
    TS_POINT = "alpha~{alpha}_h~{h}_seed~{seed}"
    TS_RUNS = [f"data/runs/time_scale/{TS.point_name(**p)}.h5" for p in TS_POINTS]
    TS_FORMATS = TS_CFG["figures"]["formats"]
    FAMILY_TARGETS["time_scale"] = expand("figures/time_scale/{name}.{ext}", name=TS.FIGURES, ext=TS_FORMATS)

    rule ts_dataset:
        output:
            "data/datasets/time_scale.h5",
        params:
            json=pjson(TS.dataset_params(TS_CFG)),
            code=code_hash("dataset"),
        log:
            "logs/time_scale/dataset.log",
        benchmark:
            "logs/benchmark/time_scale/dataset.tsv"
        shell:
            step_shell("dataset", [])

    rule ts_init:
        input:
            dataset=rules.ts_dataset.output[0],
        output:
            "data/init/time_scale/h~{h}_seed~{seed}.h5",
        params:
            json=lambda wc: pjson(TS.init_params(TS_CFG, int(wc.h), int(wc.seed))),
            code=code_hash("init"),
        log:
            "logs/time_scale/init/h~{h}_seed~{seed}.log",
        benchmark:
            "logs/benchmark/time_scale/init/h~{h}_seed~{seed}.tsv"
        shell:
            step_shell("init", ["dataset"])

    rule ts_train:
        input:
            dataset=rules.ts_dataset.output[0],
            init=rules.ts_init.output[0],
        output:
            f"data/runs/time_scale/{TS_POINT}.h5",
        params:
            json=lambda wc: pjson(TS.train_params(TS_CFG, float(wc.alpha), int(wc.h), int(wc.seed))),
            code=code_hash("train"),
        threads: RES["threads"]
        resources:
            **heavy_resources(),
        log:
            f"logs/time_scale/train/{TS_POINT}.log",
        benchmark:
            f"logs/benchmark/time_scale/train/{TS_POINT}.tsv"
        shell:
            # a killed job restarts from RUN.h5.resume (saved this often and on SIGTERM)
            step_shell("train", ["dataset", "init"], extra=f"--resume-every-s {TS_CFG['flow']['resume_every_s']:g}")

    rule ts_ntk_init:
        input:
            dataset=rules.ts_dataset.output[0],
            init=rules.ts_init.output[0],
        output:
            "data/kernels/time_scale/init/h~{h}_seed~{seed}.h5",
        params:
            json=lambda wc: pjson(TS.ntk_params(TS_CFG, int(wc.h), int(wc.seed))),
            code=code_hash("ntk"),
        threads: RES["threads"]
        resources:
            **heavy_resources(),
        log:
            "logs/time_scale/ntk_init/h~{h}_seed~{seed}.log",
        benchmark:
            "logs/benchmark/time_scale/ntk_init/h~{h}_seed~{seed}.tsv"
        shell:
            step_shell("ntk", ["dataset", "init"])

    rule ts_ntk_final:
        input:
            dataset=rules.ts_dataset.output[0],
            init=rules.ts_init.output[0],
            run=rules.ts_train.output[0],
        output:
            f"data/kernels/time_scale/final/{TS_POINT}.h5",
        params:
            json=lambda wc: pjson(TS.ntk_params(TS_CFG, int(wc.h), int(wc.seed), float(wc.alpha))),
            code=code_hash("ntk"),
        threads: RES["threads"]
        resources:
            **heavy_resources(),
        log:
            f"logs/time_scale/ntk_final/{TS_POINT}.log",
        benchmark:
            f"logs/benchmark/time_scale/ntk_final/{TS_POINT}.tsv"
        shell:
            step_shell("ntk", ["dataset", "init", "run"])

    rule ts_frozen:
        input:
            dataset=rules.ts_dataset.output[0],
            ntk=rules.ts_ntk_init.output[0],
        output:
            f"data/runs/time_scale_frozen/{TS_POINT}.h5",
        params:
            json=lambda wc: pjson(TS.kernel_train_params(TS_CFG, float(wc.alpha), int(wc.h), int(wc.seed))),
            code=code_hash("kernel_train"),
        threads: RES["threads"]
        resources:
            **heavy_resources(),
        log:
            f"logs/time_scale/frozen/{TS_POINT}.log",
        benchmark:
            f"logs/benchmark/time_scale/frozen/{TS_POINT}.tsv"
        shell:
            step_shell("kernel_train", ["dataset", "ntk"])

    rule ts_summary:
        input:
            runs=TS_RUNS,
            ntk_init=[f"data/kernels/time_scale/init/h~{p['h']}_seed~{p['seed']}.h5" for p in TS_POINTS],
            ntk_final=[r.replace("data/runs/", "data/kernels/").replace("time_scale/", "time_scale/final/")
                       for r in TS_RUNS],
            frozen=[r.replace("time_scale/", "time_scale_frozen/") for r in TS_RUNS]
            if TS_CFG["frozen_kernel"] else [],
        output:
            table="data/summary/time_scale.csv",
            curves="data/summary/time_scale_curves.csv",
        params:
            code=code_hash("summary"),
        log:
            "logs/time_scale/summary.log",
        benchmark:
            "logs/benchmark/time_scale/summary.tsv"
        shell:
            memgen_shell(
                "summary time_scale --input runs {input.runs} --input ntk_init {input.ntk_init}"
                " --input ntk_final {input.ntk_final} --input frozen {input.frozen}"
                " --output table={output.table} --output curves={output.curves}"
            )

    rule ts_figure:
        input:
            table=rules.ts_summary.output.table,
            curves=rules.ts_summary.output.curves,
        output:
            figure_outputs("time_scale", TS_FORMATS),
        wildcard_constraints:
            name="|".join(TS.FIGURES),
        params:
            options=pjson(TS_CFG["figures"]),
            code=code_hash("figure"),
        log:
            "logs/time_scale/figure/{name}.log",
        benchmark:
            "logs/benchmark/time_scale/figure/{name}.tsv"
        shell:
            memgen_shell(
                "figure time_scale {wildcards.name} --input table={input.table}"
                " --input curves={input.curves} --output {output} --options {params.options:q}"
            )
