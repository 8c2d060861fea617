import subprocess
import sys
import time
import socket


rule render_demo_images:
    output:
        images=directory(f"{DEMO_DIR}/site/images"),
    params:
        images=config["demo"]["images"],
    log:
        "logs/demo/render_images.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../envs/clipflow.yaml"
    script:
        "../scripts/render_demo_images.py"


def start_demo_server():
    """Serve the demo images while the workflow runs; the server exits with this process."""
    port = config["demo"]["port"]
    os.makedirs(f"{DEMO_DIR}/site", exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "clipflow.cli", "demo-serve", "--folder", f"{DEMO_DIR}/site"]
        + ["--port", str(port), "--parent-pid", str(os.getpid())]
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise WorkflowError(
                f"demo server could not start on 127.0.0.1:{port} (in use?); set demo.port"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise WorkflowError(f"demo server did not answer on 127.0.0.1:{port} within 30 s")


DEMO_SERVER = []


onstart:
    if config["demo"]["enabled"]:
        DEMO_SERVER.append(start_demo_server())


onsuccess:
    for server in DEMO_SERVER:
        server.terminate()
    if os.path.exists("results/summary/download.txt"):
        print(open("results/summary/download.txt").read())


onerror:
    for server in DEMO_SERVER:
        server.terminate()
