"""Your own data: import a .zip of images as a data set, then explore it on every page."""

import secrets
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from locality_core import settings
from locality_core.data import (
    DatasetError,
    default_dataset_name,
    delete_user_dataset,
    import_images,
    list_user_datasets,
)
from locality_core.data.user import MAX_IMAGES, MAX_SIDE, MAX_TOTAL_BYTES, MIN_IMAGES, PREFIX, metadata
from locality_core.denoisers.diffusers_import import TIMESTEP_RULE, list_networks
from locality_core.denoisers.registry import import_network
from locality_core.store.memory import budget_bytes, statistics_bytes
from locality_core.views.pack import PackError, import_pack
from locality_core.views.refs import DataRef
from ui import loading
from ui.state import current_view

SIZES = [16, 24, 28, 32, 48, 64]
MAX_UPLOAD_MB = st.get_option("server.maxUploadSize")
READ_ONLY = settings.READ_ONLY.flag()
OWN = "own_imports"  # session state: the names this session imported, the only ones it may replace or delete

view = current_view()
st.title("Your own data")
st.markdown(
    "Upload your own images and every page works on them: principal components, Wiener fields, analytical "
    "masks, the experiments. Locality should follow *your* data's statistics, so images of one kind of object "
    "give object-shaped fields, textures give compact blobs.")

st.markdown(
    f"**What to upload:** one `.zip` of PNG, JPEG, GIF, BMP or TIFF files (sub-folders are fine; hidden files and "
    f"`__MACOSX` are skipped), at most **{MAX_UPLOAD_MB} MB** uploaded, **{MAX_IMAGES:,} files** and "
    f"**{MAX_TOTAL_BYTES // 2**30} GiB** uncompressed; at least {MIN_IMAGES} readable images. Every image is "
    f"centre-cropped to a square and resized to the size you choose; about 10 % (chosen by file name) are held "
    "out as test images. Files that cannot be read are listed with the reason and skipped.")


def _use(name: str) -> None:
    st.session_state["dataset"] = PREFIX + name


def _delete(name: str) -> None:
    if READ_ONLY or name not in st.session_state.get(OWN, set()):
        st.session_state["delete_error"] = (f"{PREFIX}{name} was not imported in this session, so it cannot be "
                                            "deleted from here.")
        return
    try:
        delete_user_dataset(name)
        st.session_state[OWN].discard(name)
    except DatasetError as exc:
        st.session_state["delete_error"] = str(exc)
    if st.session_state.get("dataset") == PREFIX + name:
        st.session_state["dataset"] = default_dataset_name()


def import_form() -> tuple:
    """The upload widgets; returns (upload, name, side, mode, submitted)."""
    with st.container(border=True):
        upload = st.file_uploader("Images (.zip)", type=["zip"], key="zip")
        c1, c2, c3 = st.columns(3)
        default_name = st.session_state.setdefault("default_import_name", f"my-images-{secrets.token_hex(2)}")
        name = c1.text_input("Name", default_name, max_chars=64, key="import_name",
                             help=f"Letters, digits, '-' and '_'. Appears as `{PREFIX}<name>` in the data set list.")
        side = c2.selectbox("Size (pixels)", SIZES, index=SIZES.index(28), key="import_size",
                            help=f"At most {MAX_SIDE}; the statistics need a d x d covariance, d = channels x size²: "
                                 "64x64 colour is 12,288 dimensions.")
        mode = c3.radio("Colour", ["L", "RGB"], format_func={"L": "grayscale", "RGB": "colour"}.get,
                        horizontal=True, key="import_mode")
        d = (3 if mode == "RGB" else 1) * side * side
        st.caption(f"d = {d:,} dimensions: the statistics need about {statistics_bytes(d) / 2**30:.2g} GiB of "
                   f"memory (this server's budget: {budget_bytes() / 2**30:.2g} GiB).")
        submitted = st.button("Import", icon=":material/upload:", type="primary", key="import_go")
    return upload, name, side, mode, submitted


def run_import(upload, name: str, side: int, mode: str):
    """Import the uploaded zip; a name taken by another session is refused. Returns the report or None."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / (Path(upload.name).name or "upload.zip")
        path.write_bytes(upload.getbuffer())
        try:
            with st.spinner("Reading and resizing the images…"):
                report = import_images(path, name, size=(side, side), mode=mode,
                                       replace=name in st.session_state[OWN])
        except DatasetError as exc:  # name the uploaded file, never the server's temporary path
            st.error(f"Import failed: {str(exc).replace(str(path), path.name)}", icon=":material/error:")
            return None
    st.session_state[OWN].add(report.name)
    return report


st.session_state.setdefault(OWN, set())
if READ_ONLY:
    st.info("This server is read-only (LOCALITY_READ_ONLY is set): uploading and deleting data sets are turned "
            "off. Explore the data sets listed below, or run the app on your own machine to import images.",
            icon=":material/lock:")
    submitted = False
else:
    upload, name, side, mode, submitted = import_form()

if submitted:
    if upload is None:
        st.warning("Choose a .zip file first.")
    elif (report := run_import(upload, name, side, mode)) is not None:
            st.success(f"Imported {report.n_train + report.n_test:,} images as `{PREFIX}{report.name}`: "
                       f"{report.n_train:,} for training, {report.n_test:,} held out, "
                       f"{'x'.join(map(str, report.shape))}.", icon=":material/check_circle:")
            if report.skipped:
                st.warning(f"{len(report.skipped)} file(s) skipped:")
                st.dataframe(pd.DataFrame(report.skipped, columns=["file", "reason"]), width="stretch",
                             hide_index=True)
            # precompute the statistics (with a progress bar) so every page opens at once; on a problem
            # (too large for memory) require_data says so and stops here
            loading.require_data(DataRef.of(PREFIX + report.name))
            st.success("Statistics computed: the data set is ready on every page.")
            st.button(f"Explore `{PREFIX}{report.name}` now", on_click=_use, args=(report.name,), type="primary",
                      icon=":material/arrow_forward:")

st.subheader("Imported data sets")
names = list_user_datasets()
if not names:
    st.caption("None yet.")
for n in names:
    meta = metadata(n)
    c1, c2, c3 = st.columns([3, 1, 1])
    c1.markdown(f"`{PREFIX}{n}`: {meta.get('n_train', '?')} train, {meta.get('n_test', '?')} test, "
                f"shape {meta.get('shape', '?')}, from {Path(str(meta.get('source', '?'))).name}"
                + (f"; {len(meta['skipped'])} file(s) skipped" if meta.get("skipped") else ""))
    c2.button("Use", key=f"use_{n}", on_click=_use, args=(n,), icon=":material/arrow_forward:")
    if not READ_ONLY and n in st.session_state[OWN]:
        c3.button("Delete", key=f"del_{n}", on_click=_delete, args=(n,), icon=":material/delete:",
                  help="Removes the imported copy; your original files are not touched.")
if "delete_error" in st.session_state:
    st.error(st.session_state.pop("delete_error"))


def prepared_cache() -> None:
    """Import a pack of computed default views (`locality pack export` on another machine): off in read-only mode,
    where nobody may fill the server's disk."""
    st.subheader("A prepared cache")
    st.markdown("Computed the default views on a faster machine? `locality pack export talk.zip` there, then load "
                "the file here: every page it covers opens at once. Entries are checked (sizes, checksums, code "
                "version, data), nothing already here is replaced, nothing in the file is ever run.")
    if READ_ONLY:
        st.caption("Turned off on this read-only server.")
        return
    upload = st.file_uploader("Pack (.zip)", type=["zip"], key="pack_zip")
    if upload is None or not st.button("Load the pack", icon=":material/download_done:", key="pack_go"):
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / (Path(upload.name).name or "pack.zip")
        path.write_bytes(upload.getbuffer())
        bar = st.progress(0.0)
        try:
            report = import_pack(path, progress=lambda f, text: bar.progress(min(max(f, 0.0), 1.0), text=text))
        except PackError as exc:  # name the uploaded file, never the server's temporary path
            st.error(f"Not loaded: {str(exc).replace(str(path), path.name)}", icon=":material/error:")
            return
        finally:
            bar.empty()
    st.success(f"{report.written} entries loaded ({report.bytes / 2**20:.1f} MB); {report.present} were here "
               f"already; {len(report.skipped)} skipped.", icon=":material/check_circle:")
    if report.skipped:
        st.dataframe(pd.DataFrame(report.skipped, columns=["entry", "why skipped"]), width="stretch", hide_index=True)


def own_network() -> None:
    """Import a diffusers UNet2DModel (a .zip of its folder) as a denoiser of the data set chosen in the sidebar:
    off in read-only mode; a name imported by another session is not replaced."""
    st.subheader("Your own network")
    st.markdown(f"Does *your* trained network's locality follow the data? Upload a `.zip` of a diffusers "
                "`UNet2DModel` folder (`config.json`, `diffusion_pytorch_model.safetensors` and the scheduler's "
                "`scheduler_config.json`) trained on the data set chosen in the sidebar: it becomes a denoiser with "
                "its own rows on Sensitivity and Samples. Unconditional networks only; safetensors only (a pickle "
                f"`.bin` is refused unopened); channels and size are checked. Its timestep is {TIMESTEP_RULE}. "
                "From the command line: `locality import-model NAME FOLDER --dataset DATASET`.")
    if READ_ONLY:
        st.caption("Turned off on this read-only server.")
        return
    upload = st.file_uploader("Network folder (.zip)", type=["zip"], key="net_zip")
    c1, c2 = st.columns(2)
    name = c1.text_input("Denoiser name", "my-network", max_chars=64, key="net_name")
    pixel_range = c2.radio("Trained on pixels in", ["-1,1", "0,1"], horizontal=True, key="net_range",
                           format_func={"-1,1": "[-1, 1] (diffusers' recipes)", "0,1": "[0, 1]"}.get)
    if upload is None or not st.button("Import the network", icon=":material/upload:", key="net_go"):
        return
    own = st.session_state.setdefault("own_networks", set())
    if name in list_networks() and name not in own:
        st.error(f"A network named {name} was imported by someone else; choose another name.")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / (Path(upload.name).name or "network.zip")
        path.write_bytes(upload.getbuffer())
        try:
            with st.spinner("Checking and loading the network…"):
                record = import_network(path, name, loading.dataset(view.ref), pixel_range=pixel_range)
        except loading.USER_ERRORS as exc:  # name the uploaded file, never the server's temporary path
            st.error(f"Not imported: {str(exc).replace(str(path), path.name)}", icon=":material/error:")
            return
    own.add(name)
    st.success(f"Imported `{name}` for {record['dataset']}: {record['parameters']:,} parameters, "
               f"{record['prediction_type']} prediction. Open Sensitivity or Samples to see it.",
               icon=":material/check_circle:")


own_network()
prepared_cache()
