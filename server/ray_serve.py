"""The replicated server as a Ray Serve application, for `serve run` and KubeRay's RayService:

    serve run llmdoctor.server.ray_serve:app            # import_path in a RayService's serveConfigV2

Its settings come from LLMDOCTOR_* environment variables (the same as `llmdoctor serve`'s flags;
LLMDOCTOR_REPLICAS sets the engine replicas). `llmdoctor serve --replicas N` builds the same app.
"""

from llmdoctor.server.config import ServerSettings
from llmdoctor.server.replicas.gateway import build_application

app = build_application(ServerSettings())
