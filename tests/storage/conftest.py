from tests.elasticsearch_server import es_proxy, es_server_url, es_url

__all__ = ["es_proxy", "es_server_url", "es_url"]
