# medprep on Dataflow: one image that is both the custom worker (SDK container, runner v2) and the
# flex-template launcher. README "Run on Dataflow" has the commands.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/medprep:TAG .                 # worker + launcher
#   docker build --target worker -t REGION-docker.pkg.dev/PROJECT/REPO/medprep-worker:TAG .   # worker only
#
# The Beam SDK of the base image must equal the apache-beam that setup.py pins (tests/test_packaging.py).

# The flex-template launcher binary comes from Google's launcher base image.
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS template_launcher

FROM apache/beam_python3.11_sdk:2.77.0 AS worker

WORKDIR /opt/medprep
# Only what the package needs; dependencies come from setup.py's install_requires, the one list.
# Native readers ship as manylinux wheels: OpenSlide (openslide-bin), GDCM (python-gdcm),
# OpenJPEG (pylibjpeg-openjpeg), ITK (SimpleITK), ArrayRecord; the import check proves they load.
COPY setup.py README.md ./
COPY transforms ./transforms
COPY schemas ./schemas
COPY pipelines ./pipelines
COPY medprep ./medprep
RUN pip install --no-cache-dir . && pip check \
    && python -c "import openslide, gdcm, openjpeg, SimpleITK, array_record.python.array_record_module, wsidicom; \
import medprep.transforms, medprep.schemas, medprep.pipelines.graphs.images, medprep.pipelines.graphs.volumes, \
medprep.pipelines.graphs.slides; print(openslide.__library_version__)"

# Keep worker logs and temp files off the boot disk's root; slides from gs:// are localized here.
ENV TMPDIR=/tmp

# Workers: the Beam SDK harness stays the entrypoint, as Dataflow expects of a custom container.
ENTRYPOINT ["/opt/apache/beam/boot"]

FROM worker AS flex
# The same image launches flex templates: the launcher VM runs python_template_launcher, which runs
# FLEX_TEMPLATE_PYTHON_PY_FILE with the template's parameters; the job's workers run this image too
# (pass sdk_container_image=<this image>). The package is installed, so no setup file is staged.
COPY --from=template_launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/medprep/pipelines/cli/flex_main.py
ENTRYPOINT ["/opt/apache/beam/boot"]
