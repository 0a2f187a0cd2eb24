"""Django settings of the test TOM: TOM Toolkit's defaults, SQLite in $STDD_TOM_HOME, REST API with
basic and token authentication. Runs only in the TOM venv (scripts/tom_venv.sh), never in stdd's."""
import os

from tom_common.default_settings import *  # noqa: F401,F403 — TOM Toolkit's documented way to start a site

HOME = os.environ.get("STDD_TOM_HOME", "/tmp/stdd-tom")
SECRET_KEY = "stdd-test-tom-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
TOM_NAME = "stdd-test-tom"
INSTALLED_APPS = TOMTOOLKIT_INSTALLED_APPS  # noqa: F405
MIDDLEWARE = TOMTOOLKIT_MIDDLEWARE  # noqa: F405
ROOT_URLCONF = "tom_site.urls"
SITE_ID = 1
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [], "APP_DIRS": True,
    "OPTIONS": {"context_processors": ["django.template.context_processors.request",
                                       "django.contrib.auth.context_processors.auth",
                                       "django.contrib.messages.context_processors.messages"]},
}]
CRISPY_TEMPLATE_PACK = "bootstrap5"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(HOME, "tom.sqlite3")}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "/static/"
MEDIA_ROOT = os.path.join(HOME, "data")
MEDIA_URL = "/data/"
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}
TARGET_TYPE = "SIDEREAL"
DATA_PRODUCT_TYPES = {"photometry": ("photometry", "Photometry"), "image_file": ("image_file", "Image File")}
DATA_PROCESSORS = {"photometry": "tom_dataproducts.processors.photometry_processor.PhotometryProcessor"}
TOM_FACILITY_CLASSES = []
EXTRA_FIELDS = []
AUTH_STRATEGY = "READ_ONLY"
TARGET_PERMISSIONS_ONLY = True
TARGET_DEFAULT_PERMISSION = "PRIVATE"
HOOKS = {
    "target_post_save": "tom_common.hooks.target_post_save",
    "data_product_post_upload": "tom_dataproducts.hooks.data_product_post_upload",
    "data_product_post_save": "tom_dataproducts.hooks.data_product_post_save",
    "multiple_data_products_post_save": "tom_dataproducts.hooks.multiple_data_products_post_save",
}
AUTO_THUMBNAILS = False
HINTS_ENABLED = False
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tom_common.accounts.api_auth.TomTokenAuthentication",
                                       "rest_framework.authentication.BasicAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
}
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "handlers": {"console": {"class": "logging.StreamHandler"}},
           "loggers": {"": {"handlers": ["console"], "level": "WARNING"}}}
