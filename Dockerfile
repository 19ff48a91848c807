# Dataflow custom worker image for medprep (runner v2). Build and push, then run with
#   --sdk_container_image=REGION-docker.pkg.dev/PROJECT/REPO/medprep:TAG --experiments=use_runner_v2
# The Beam SDK version of the base image must match the apache-beam installed from setup.py.
FROM apache/beam_python3.11_sdk:2.77.0

WORKDIR /opt/medprep
# Only what the package needs; dependencies come from setup.py's install_requires, the one list.
COPY setup.py README.md ./
COPY transforms ./transforms
COPY schemas ./schemas
COPY pipelines ./pipelines
RUN pip install --no-cache-dir . && pip check && python -c "import transforms, schemas, pipelines, openslide, gdcm"

# The Beam SDK harness stays the entrypoint, as Dataflow expects.
ENTRYPOINT ["/opt/apache/beam/boot"]
