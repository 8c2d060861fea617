from clipflow.workflow import start_demo_server, stop_demo_server


rule render_demo_images:
    output:
        images=directory(f"{DEMO_DIR}/site/images"),
    log:
        "logs/demo/render_images.log",
    conda:
        "../envs/clipflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        images=config["demo"]["images"],
    script:
        "../scripts/render_demo_images.py"


DEMO_SERVER = []


onstart:
    if config["demo"]["enabled"]:
        DEMO_SERVER.append(
            checked(start_demo_server, f"{DEMO_DIR}/site", config["demo"]["port"])
        )


onsuccess:
    stop_demo_server(DEMO_SERVER[0] if DEMO_SERVER else None)
    if os.path.exists("results/summary/download.txt"):
        print(open("results/summary/download.txt").read())


onerror:
    stop_demo_server(DEMO_SERVER[0] if DEMO_SERVER else None)
