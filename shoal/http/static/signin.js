// The page /login answers with: keep the session's page token in this origin's
// storage (an origin includes the port, unlike a cookie), then go on to the UI.
const token = document.querySelector('meta[name="shoal-page-token"]')?.content;
if (token) localStorage.setItem("shoal.pageToken", token);
location.replace("/");
