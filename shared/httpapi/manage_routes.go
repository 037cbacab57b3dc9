package httpapi

import "net/http"

// Handler names of the management API's routes (SPEC §13), as
// functions/manage.Handlers provides them.
const (
	HandlerManageRequestList      = "manage_request_list"
	HandlerManageRequestGet       = "manage_request_get"
	HandlerManageRequestRetry     = "manage_request_retry"
	HandlerManageRequestsCancel   = "manage_requests_cancel"
	HandlerManageRequestsRetry    = "manage_requests_retry"
	HandlerManageDeploymentList   = "manage_deployment_list"
	HandlerManageDeploymentUpdate = "manage_deployment_update"
	HandlerManageDeploymentPut    = "manage_deployment_put"
	HandlerManageDeploymentPurge  = "manage_deployment_purge"
	HandlerManageModelPut         = "manage_model_put"
	HandlerManageSecretList       = "manage_webhook_secret_list"
	HandlerManageSecretRotate     = "manage_webhook_secret_rotate"
	HandlerManageKeyList          = "manage_api_key_list"
	HandlerManageKeyCreate        = "manage_api_key_create"
	HandlerManageKeyRevoke        = "manage_api_key_revoke"
)

// ManagementRoutes are the management API's rows of Routes: served by the
// status function, for keys of scope manage, naming no model.
var ManagementRoutes = []Route{
	{http.MethodGet, "/v1/requests", FunctionStatus, AuthManage, ScopeNone, HandlerManageRequestList},
	{http.MethodGet, "/v1/requests/{request_id}", FunctionStatus, AuthManage, ScopeNone, HandlerManageRequestGet},
	{http.MethodPost, "/v1/requests/{request_id}/retry", FunctionStatus, AuthManage, ScopeNone, HandlerManageRequestRetry},
	{http.MethodPost, "/v1/requests/cancel", FunctionStatus, AuthManage, ScopeNone, HandlerManageRequestsCancel},
	{http.MethodPost, "/v1/requests/retry", FunctionStatus, AuthManage, ScopeNone, HandlerManageRequestsRetry},
	{http.MethodGet, "/v1/deployments", FunctionStatus, AuthManage, ScopeNone, HandlerManageDeploymentList},
	{http.MethodPatch, "/v1/deployments/{deployment_id}", FunctionStatus, AuthManage, ScopeNone, HandlerManageDeploymentUpdate},
	{http.MethodPut, "/v1/deployments/{deployment_id}", FunctionStatus, AuthManage, ScopeNone, HandlerManageDeploymentPut},
	{http.MethodPost, "/v1/deployments/{deployment_id}/purge", FunctionStatus, AuthManage, ScopeNone, HandlerManageDeploymentPurge},
	{http.MethodPut, "/v1/models/{model_id}", FunctionStatus, AuthManage, ScopeNone, HandlerManageModelPut},
	{http.MethodGet, "/v1/webhook-secrets", FunctionStatus, AuthManage, ScopeNone, HandlerManageSecretList},
	{http.MethodPost, "/v1/webhook-secrets/rotate", FunctionStatus, AuthManage, ScopeNone, HandlerManageSecretRotate},
	{http.MethodGet, "/v1/api-keys", FunctionStatus, AuthManage, ScopeNone, HandlerManageKeyList},
	{http.MethodPost, "/v1/api-keys", FunctionStatus, AuthManage, ScopeNone, HandlerManageKeyCreate},
	{http.MethodDelete, "/v1/api-keys/{api_key_id}", FunctionStatus, AuthManage, ScopeNone, HandlerManageKeyRevoke},
}

// The management API's rows join the table, as Routes' doc says a package
// bringing several routes may.
func init() { Routes = append(Routes, ManagementRoutes...) }
