# Inverse Hessian-vector products and influence functions (Koh & Liang 2017; seed 003).
# toy (exact/CG/LiSSA, LiSSA paths)                                   -> summary -> figures
# digits -> train {logreg, mlp} -> influence -> {leave-one-out, CG vs LiSSA} -> summary
from memgen.experiments import curvature as CV

if "curvature" in config:
    CV_CFG = config["curvature"]
    CV_FORMATS = CV_CFG["figures"]["formats"]
    FAMILY_TARGETS["curvature"] = expand("figures/curvature/{name}.{ext}", name=CV.FIGURES, ext=CV_FORMATS)

    wildcard_constraints:
        cv_model="|".join(CV.MODELS),

    rule cv_toy:
        output:
            "data/curvature/toy.h5",
        params:
            json=pjson(CV.toy_params(CV_CFG)),
            code=code_hash("curvature_toy"),
        log:
            "logs/curvature/toy.log",
        shell:
            step_shell("curvature_toy", [])

    rule cv_digits:
        output:
            "data/datasets/curvature_digits.h5",
        params:
            json=pjson(CV.digits_params(CV_CFG)),
            code=code_hash("curvature_digits"),
        log:
            "logs/curvature/digits.log",
        shell:
            step_shell("curvature_digits", [])

    rule cv_train:
        input:
            dataset=rules.cv_digits.output[0],
        output:
            "data/curvature/train/{cv_model}.h5",
        params:
            json=lambda wc: pjson(CV.train_params(CV_CFG, wc.cv_model)),
            code=code_hash("curvature_train"),
        threads: RES["threads"]
        resources:
            **heavy_resources(),
        log:
            "logs/curvature/train/{cv_model}.log",
        benchmark:
            "logs/benchmark/curvature/train/{cv_model}.tsv"
        shell:
            step_shell("curvature_train", ["dataset"])

    rule cv_influence:
        input:
            dataset=rules.cv_digits.output[0],
            train=rules.cv_train.output[0],
        output:
            "data/curvature/influence/{cv_model}.h5",
        params:
            json=lambda wc: pjson(CV.influence_params(CV_CFG, wc.cv_model)),
            code=code_hash("curvature_influence"),
        threads: RES["threads"]
        resources:
            **heavy_resources(),
        log:
            "logs/curvature/influence/{cv_model}.log",
        benchmark:
            "logs/benchmark/curvature/influence/{cv_model}.tsv"
        shell:
            step_shell("curvature_influence", ["dataset", "train"])

    rule cv_loo:
        input:
            dataset=rules.cv_digits.output[0],
            train=rules.cv_train.output[0],
            influence=rules.cv_influence.output[0],
        output:
            "data/curvature/loo/{cv_model}.h5",
        params:
            json=lambda wc: pjson(CV.loo_params(CV_CFG, wc.cv_model)),
            code=code_hash("curvature_loo"),
        threads: RES["threads"]
        resources:
            **heavy_resources(),
        log:
            "logs/curvature/loo/{cv_model}.log",
        benchmark:
            "logs/benchmark/curvature/loo/{cv_model}.tsv"
        shell:
            step_shell("curvature_loo", ["dataset", "train", "influence"])

    rule cv_solvers:
        input:
            dataset=rules.cv_digits.output[0],
            train=rules.cv_train.output[0],
            influence=rules.cv_influence.output[0],
        output:
            "data/curvature/solvers/{cv_model}.h5",
        params:
            json=lambda wc: pjson(CV.solvers_params(CV_CFG, wc.cv_model)),
            code=code_hash("curvature_solvers"),
        threads: RES["threads"]
        resources:
            **heavy_resources(),
        log:
            "logs/curvature/solvers/{cv_model}.log",
        benchmark:
            "logs/benchmark/curvature/solvers/{cv_model}.tsv"
        shell:
            step_shell("curvature_solvers", ["dataset", "train", "influence"])

    rule cv_summary:
        input:
            toy=rules.cv_toy.output[0],
            dataset=rules.cv_digits.output[0],
            train=expand("data/curvature/train/{m}.h5", m=CV.MODELS),
            influence=expand("data/curvature/influence/{m}.h5", m=CV.MODELS),
            loo=expand("data/curvature/loo/{m}.h5", m=CV.MODELS),
            solvers=expand("data/curvature/solvers/{m}.h5", m=CV.MODELS),
        output:
            **{k: f"data/summary/curvature_{k}.csv" for k in CV.SUMMARIES},
        params:
            n_images=CV_CFG["figures"]["n_images"],
            code=code_hash("summary"),
        log:
            "logs/curvature/summary.log",
        shell:
            memgen_shell(
                "summary curvature --input toy {input.toy} --input dataset {input.dataset}"
                " --input train {input.train} --input influence {input.influence} --input loo {input.loo}"
                " --input solvers {input.solvers} --input n_images {params.n_images} "
                + " ".join(f"--output {k}={{output.{k}}}" for k in CV.SUMMARIES)
            )

    rule cv_figure:
        input:
            **{k: f"data/summary/curvature_{k}.csv" for k in CV.SUMMARIES},
        output:
            figure_outputs("curvature", CV_FORMATS),
        wildcard_constraints:
            name="|".join(CV.FIGURES),
        params:
            options=pjson(CV_CFG["figures"]),
            code=code_hash("figure"),
            inputs=" ".join(f"--input {k}=data/summary/curvature_{k}.csv" for k in CV.SUMMARIES),
        log:
            "logs/curvature/figure/{name}.log",
        shell:
            memgen_shell(
                "figure curvature {wildcards.name} {params.inputs}"
                " --output {output} --options {params.options:q}"
            )
